//! The dashboard in a real browser: headless Chromium opens `GET /dashboard` on a running Portico with anomaly
//! detection, and the test reads the rendered page: the upstream's endpoints, charts with points, and — after
//! one endpoint starts failing — the incident with its probable cause and its marks on the charts. The page
//! must run under its own Content-Security-Policy and load nothing from anywhere but the admin listener.

use crate::browser::Browser;
use crate::support::*;
use std::time::Duration;

/// Bounds only a hang trips: a busy two-core machine takes seconds where an idle one takes milliseconds.
const PAGE_WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_endpoints_charts_and_the_incident_a_fault_causes() -> TestResult {
    let (a, b) = (TestUpstream::start("a").await, TestUpstream::start("b").await);
    let config = reverse_config(&quoted(&[&a, &b]), "retries = 0")
        + r#"
[anomaly]
interval = "50ms"
warmup = 30
thresholds = { warning = 0.7, critical = 0.9, for_ticks = 2, resolve_ticks = 3 }
"#;
    let p = Portico::start(&config).await;
    let web = p.addr("web").await;
    let load = tokio::spawn(async move {
        loop {
            let _ = get(web, "/").await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    let page = get(p.admin, "/dashboard").await?;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"), "{:?}", page.headers);
    let csp = page.header("content-security-policy");
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'"), "{csp}");

    let mut browser = Browser::open(&format!("http://{}/dashboard", p.admin), 1400, 1000).await?;

    // Both endpoints of the upstream are listed, with their state.
    let endpoints = browser
        .wait_for(
            "both endpoints of upstream app",
            r#"(() => {
                const rows = [...document.querySelectorAll('#upstreams [data-upstream="app"] tr[data-endpoint]')];
                return rows.length === 2 ? rows.map((r) => [r.dataset.endpoint, r.dataset.status]).sort() : null;
            })()"#,
            PAGE_WAIT,
        )
        .await?;
    let mut expected = [a.addr.to_string(), b.addr.to_string()];
    expected.sort();
    assert_eq!(endpoints, serde_json::json!([[expected[0], "healthy"], [expected[1], "healthy"]]));

    // Charts for the listener and the upstream, each drawn with several points.
    let charts = browser
        .wait_for(
            "charts with points for listener web and upstream app",
            r#"(() => {
                const drawn = (scope) => [...document.querySelectorAll(`[data-scope="${scope}"] svg.chart`)]
                    .map((svg) => Number(svg.dataset.points));
                const web = drawn('listener.web'), app = drawn('upstream.app');
                const ok = (c) => c.length === 3 && c.every((n) => n >= 3);
                return ok(web) && ok(app) ? { web, app } : null;
            })()"#,
            PAGE_WAIT,
        )
        .await?;
    assert_eq!(charts["web"].as_array().map(Vec::len), Some(3), "{charts}");

    // The detector has learned normal traffic (past its warm-up) before the fault.
    let learned =
        eventually_json(p.admin, "/anomaly/stats", PAGE_WAIT, |s| s["detector"]["ticks"].as_u64() >= Some(50)).await;
    assert!(learned, "the detector did not get past its warm-up");

    // Endpoint b fails every request: an incident opens, the page lists it with its cause and marks the charts.
    b.set(Behavior::Status(500));
    let shown = browser
        .wait_for(
            "an incident with its cause, marked on the upstream's charts",
            r#"(() => {
                const row = document.querySelector('#incidents tr[data-incident]');
                const marks = document.querySelectorAll('[data-scope="upstream.app"] svg.chart .marker-incident').length;
                const alerts = [...document.querySelectorAll('#alerts tr[data-series]')].map((r) => r.dataset.series);
                return row && marks > 0 && alerts.length > 0
                    ? { id: row.dataset.incident, cause: row.dataset.cause, text: row.innerText, marks, alerts }
                    : null;
            })()"#,
            PAGE_WAIT,
        )
        .await?;
    let incidents = get(p.admin, "/anomaly/incidents").await?.json();
    let listed = incidents.as_array().and_then(|list| list.iter().find(|i| i["id"] == shown["id"]));
    let listed = listed.ok_or_else(|| format!("the page shows {shown} but the API has {incidents}"))?;
    assert_eq!(shown["cause"], listed["cause"]["alert"]["series"], "the page names the API's cause");
    let cause = shown["cause"].as_str().unwrap_or_default();
    assert!(cause.ends_with(".error_ratio"), "a failing endpoint is an error-ratio incident: {shown}");
    assert!(shown["text"].as_str().is_some_and(|t| t.contains(cause)), "the cause is written out: {shown}");

    // Everything came from the admin listener, under the page's policy.
    let origin = format!("http://{}/", p.admin);
    let loaded = browser.eval("performance.getEntriesByType('resource').map((e) => e.name)").await?;
    let loaded = loaded.as_array().ok_or("resource list")?;
    assert!(loaded.iter().any(|u| u.as_str().is_some_and(|u| u.ends_with("/dashboard/app.js"))), "{loaded:?}");
    assert!(loaded.iter().all(|u| u.as_str().is_some_and(|u| u.starts_with(&origin))), "{loaded:?}");
    let violations = browser.eval("window.__cspViolations").await?;
    assert_eq!(violations, serde_json::json!([]), "the page breaks its own Content-Security-Policy");

    browser.close().await;
    load.abort();
    Ok(())
}

/// Makes `docs/dashboard.png` from a running demo (`portico demo`, then this while an incident is open):
/// `DASHBOARD_URL=http://127.0.0.1:9901/dashboard cargo test -p portico --test all dashboard_screenshot -- --ignored`.
#[tokio::test]
#[ignore = "writes docs/dashboard.png from a demo run by hand; not a test"]
async fn dashboard_screenshot() -> TestResult {
    let url = std::env::var("DASHBOARD_URL").unwrap_or_else(|_| "http://127.0.0.1:9901/dashboard".into());
    let mut browser = Browser::open(&url, 1400, 1000).await?;
    let ready = r#"document.querySelectorAll('#incidents tr[data-incident]').length > 0
        && document.querySelectorAll('#upstreams tr[data-endpoint]').length > 0
        && document.querySelectorAll('#scores tr[data-series]').length > 0
        && document.querySelectorAll('svg.chart .marker-incident').length > 0"#;
    browser.wait_for("an incident, endpoints, scores and marked charts", ready, PAGE_WAIT).await?;
    let png = browser.screenshot().await?;
    std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/dashboard.png"), png)?;
    browser.close().await;
    Ok(())
}

/// Polls an admin JSON route until `cond` holds on its answer, for at most `limit`.
async fn eventually_json(
    admin: std::net::SocketAddr,
    path: &str,
    limit: Duration,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Ok(answer) = get(admin, path).await {
            if cond(&answer.json()) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
