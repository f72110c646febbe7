//! Reverse proxying: spread, failover, retries, errors, headers, passive and active health.

use crate::support::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn weighted_round_robin_spreads_exactly() -> TestResult {
    let (a, b, c) = (TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await);
    let endpoints = vec![
        format!("\"{}\"", a.addr),
        format!("\"{}\"", b.addr),
        format!("{{ address = \"{}\", weight = 2 }}", c.addr),
    ];
    let p = Portico::start(&reverse_config(&endpoints, "")).await;
    let web = p.addr("web").await;
    for _ in 0..400 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 100, 200));
    Ok(())
}

#[tokio::test]
async fn failover_when_one_of_three_dies_loses_no_request() -> TestResult {
    let ups = [TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await];
    let extra = r#"retries = 2
connect_timeout = "200ms"
health_check = { path = "/health", interval = "200ms", timeout = "100ms", unhealthy_threshold = 2, healthy_threshold = 1 }
outlier_detection = { consecutive_5xx = 2, base_ejection_time = "5s", max_ejection_percent = 50 }"#;
    let p = Portico::start(&reverse_config(&quoted(&[&ups[0], &ups[1], &ups[2]]), extra)).await;
    let web = p.addr("web").await;
    let mut failures = 0;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in 0..150 {
                match get(web, &format!("/w{worker}/{i}")).await {
                    Ok(a) if a.status == 200 => {}
                    other => {
                        eprintln!("failed: {other:?}");
                        failed += 1
                    }
                }
            }
            failed
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    ups[1].kill();
    for t in tasks {
        failures += t.await?;
    }
    assert_eq!(failures, 0, "requests failed during failover");
    let before = ups[1].hits();
    for _ in 0..30 {
        assert_eq!(get(web, "/after").await?.status, 200);
    }
    assert_eq!(ups[1].hits(), before);
    Ok(())
}

#[tokio::test]
async fn errors_are_answered_with_json_naming_the_request() -> TestResult {
    // Nothing listens on a port we bound and closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let p = Portico::start(&reverse_config(&[format!("\"{dead}\"")], "retries = 0\nconnect_timeout = \"200ms\"")).await;
    let a = send(p.addr("web").await, "GET", "/", &[("x-request-id", "req-42")], "").await?;
    assert_eq!(a.status, 502);
    assert_eq!(a.json()["error"], "upstream_failed");
    assert_eq!(a.json()["request_id"], "req-42");
    assert_eq!(a.header("x-request-id"), "req-42");

    let slow = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(3))).await;
    let p = Portico::start(&reverse_config(&quoted(&[&slow]), "request_timeout = \"200ms\"")).await;
    let a = get(p.addr("web").await, "/").await?;
    assert_eq!(a.status, 504);
    assert_eq!(a.json()["error"], "upstream_timeout");
    Ok(())
}

#[tokio::test]
async fn all_endpoints_down_is_a_prompt_503() -> TestResult {
    let a = TestUpstream::start_with("a", Behavior::SickHealth).await;
    let extra = r#"health_check = { path = "/health", interval = "100ms", timeout = "100ms", unhealthy_threshold = 1, healthy_threshold = 1 }"#;
    let p = Portico::start(&reverse_config(&quoted(&[&a]), extra)).await;
    let web = p.addr("web").await;
    // Wait for the health check to mark it down (not a fixed sleep); the 503 names no_healthy_upstream,
    // so nothing was tried and no timeout was waited out.
    let down = eventually_async_admin_all_unhealthy(p.admin).await;
    assert!(down, "the health check marks the endpoint unhealthy");
    let answer = get(web, "/").await?;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"], "no_healthy_upstream");
    let upstreams = get(p.admin, "/upstreams").await?.json();
    assert_eq!(upstreams[0]["endpoints"][0]["status"], "unhealthy");
    Ok(())
}

#[tokio::test]
async fn an_endpoint_failing_health_checks_comes_back_when_it_recovers() -> TestResult {
    let (sick, ok) = (TestUpstream::start_with("sick", Behavior::SickHealth).await, TestUpstream::start("ok").await);
    let extra = r#"health_check = { path = "/health", interval = "100ms", timeout = "100ms", unhealthy_threshold = 2, healthy_threshold = 2 }"#;
    let p = Portico::start(&reverse_config(&quoted(&[&sick, &ok]), extra)).await;
    let status =
        |admin| async move { get(admin, "/upstreams").await.map(|a| a.json()[0]["endpoints"][0]["status"].clone()) };
    let mut seen_unhealthy = false;
    for _ in 0..50 {
        if status(p.admin).await? == "unhealthy" {
            seen_unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_unhealthy, "two failed probes mark the endpoint unhealthy");
    let before = sick.hits();
    for _ in 0..10 {
        assert_eq!(get(p.addr("web").await, "/").await?.header("x-upstream"), "ok");
    }
    assert_eq!(sick.hits(), before);
    sick.set(Behavior::Echo);
    let mut back = false;
    for _ in 0..50 {
        if status(p.admin).await? == "healthy" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "two good probes bring it back");
    Ok(())
}

#[tokio::test]
async fn retries_move_to_another_endpoint_and_outliers_are_ejected() -> TestResult {
    let bad = TestUpstream::start_with("bad", Behavior::Status(503)).await;
    let good = TestUpstream::start("good").await;
    let extra = r#"retries = 1
outlier_detection = { consecutive_5xx = 3, base_ejection_time = "30s", max_ejection_percent = 50 }"#;
    let p = Portico::start(&reverse_config(&quoted(&[&bad, &good]), extra)).await;
    let web = p.addr("web").await;
    for _ in 0..20 {
        let a = get(web, "/").await?;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-upstream"), "good");
    }
    assert_eq!(bad.hits(), 3, "ejected after three consecutive 5xx");
    let upstreams = get(p.admin, "/upstreams").await?.json();
    assert_eq!(upstreams[0]["endpoints"][0]["status"], "ejected");
    // A POST is not idempotent: it is not retried, and with `bad` ejected it goes to `good`.
    assert_eq!(send(web, "POST", "/", &[], "payload").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn forwarding_headers_and_trace_context() -> TestResult {
    let a = TestUpstream::start("a").await;
    let p = Portico::start(&reverse_config(&quoted(&[&a]), "")).await;
    let web = p.addr("web").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let answer = send(
        web,
        "GET",
        "/x?y=1",
        &[("traceparent", parent), ("connection", "x-drop"), ("x-drop", "1"), ("x-forwarded-for", "10.1.1.1")],
        "",
    )
    .await?;
    let echo = answer.json();
    let seen = &echo["headers"];
    assert_eq!(echo["path"], "/x?y=1");
    let tp = seen["traceparent"].as_str().unwrap_or("");
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert!(!tp.contains("00f067aa0ba902b7"), "a new span id for the upstream hop");
    assert_eq!(seen["x-forwarded-for"], "10.1.1.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["via"], "1.1 portico");
    assert_eq!(seen["host"], web.to_string(), "the client's Host, passed on");
    assert!(seen.get("x-drop").is_none(), "headers named by Connection are hop-by-hop");
    assert_eq!(seen["x-request-id"].as_str(), Some(answer.header("x-request-id")));
    assert_eq!(answer.header("x-request-id").len(), 32);

    // Bodies stream through both ways.
    let big = "z".repeat(3 * 1024 * 1024);
    let answer = send(web, "PUT", "/upload", &[], &big).await?;
    assert_eq!(answer.json()["body_len"], 3 * 1024 * 1024);
    Ok(())
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_against_a_sick_upstream() -> TestResult {
    let (a, b) = (
        TestUpstream::start_with("a", Behavior::Status(503)).await,
        TestUpstream::start_with("b", Behavior::Status(503)).await,
    );
    let extra = "retries = 1\nretry_budget = { percent = 10, min_per_second = 2 }";
    let p = Portico::start(&reverse_config(&quoted(&[&a, &b]), extra)).await;
    let web = p.addr("web").await;
    let started = std::time::Instant::now();
    for _ in 0..60 {
        assert_eq!(get(web, "/").await?.status, 503);
    }
    let seconds = started.elapsed().as_secs() + 1;
    let retries = a.hits() + b.hits() - 60;
    assert!(retries > 0, "some retries are allowed");
    let bound = 6 + 2 * seconds as usize;
    assert!(retries <= bound, "{retries} retries for 60 requests; the budget allows at most {bound}");
    Ok(())
}

#[tokio::test]
async fn ejection_never_exceeds_max_ejection_percent() -> TestResult {
    let ups = [
        TestUpstream::start_with("a", Behavior::Status(500)).await,
        TestUpstream::start_with("b", Behavior::Status(500)).await,
        TestUpstream::start_with("c", Behavior::Status(500)).await,
        TestUpstream::start_with("d", Behavior::Status(500)).await,
    ];
    let extra = "retries = 0\noutlier_detection = { consecutive_5xx = 1, base_ejection_time = \"30s\", max_ejection_percent = 50 }";
    let p = Portico::start(&reverse_config(&quoted(&[&ups[0], &ups[1], &ups[2], &ups[3]]), extra)).await;
    let web = p.addr("web").await;
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.status, 500);
    }
    let upstreams = get(p.admin, "/upstreams").await?.json();
    let ejected =
        upstreams[0]["endpoints"].as_array().ok_or("endpoints")?.iter().filter(|e| e["status"] == "ejected").count();
    assert_eq!(ejected, 2, "{upstreams}");
    Ok(())
}

/// Each data-path worker keeps its own upstream pool: sequential requests on fresh client connections, which
/// the listener hands to the workers in turn, open one upstream connection per worker and then reuse them.
/// Served on the caller's runtime (`--workers 0`) there is one shared pool.
#[tokio::test]
async fn each_worker_reuses_its_own_upstream_connections() -> TestResult {
    for (workers, least, most) in [(2, 2, 3), (3, 3, 4), (0, 1, 2)] {
        let app = TestUpstream::start("app").await;
        let p = Portico::start_with_workers(&reverse_config(&quoted(&[&app]), ""), workers).await;
        let web = p.addr("web").await;
        for i in 0..40 {
            let answer = get(web, &format!("/{i}")).await?;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.json()["path"], format!("/{i}"));
        }
        let opened = app.connections();
        // At least one per worker (requests alternate between workers); at most one more, for a request that
        // arrives while its worker's only connection is still being handed back to the pool.
        assert!(
            (least..=most).contains(&opened),
            "{workers} workers: {opened} upstream connections for 40 sequential requests"
        );
    }
    Ok(())
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() -> TestResult {
    let app = TestUpstream::start("app").await;
    let extra = r#"pool = { idle_timeout = "1s" }"#;
    let p = Portico::start(&reverse_config(&quoted(&[&app]), extra)).await;
    let web = p.addr("web").await;
    for i in 0..6 {
        assert_eq!(get(web, &format!("/{i}")).await?.status, 200);
    }
    assert!(app.open_connections() >= 1, "the pool keeps a connection after the requests");
    let metrics = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    let idle = format!("portico_upstream_endpoint_idle_connections{{endpoint=\"{}\",upstream=\"app\"}} 0\n", app.addr);
    assert!(metrics.contains("portico_upstream_endpoint_idle_connections{") && !metrics.contains(&idle), "{metrics}");
    // Nothing comes to reuse them: the sweeper closes them once they are a second old.
    assert!(
        eventually(Duration::from_secs(5), || app.open_connections() == 0).await,
        "{} upstream connections still open after the idle timeout",
        app.open_connections()
    );
    // And the next request opens a fresh one.
    assert_eq!(get(web, "/again").await?.status, 200);
    Ok(())
}

/// How [`one_answer_per_connection_upstream`] ends a connection after its one answer.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Closes it 30 ms later, while it sits idle in the proxy's pool.
    CloseWhenIdle,
    /// Waits for the next request and closes without answering: the race of a keep-alive timer firing just
    /// as the proxy reuses the connection.
    DropNextRequest,
}

/// An upstream that answers one request per connection and then closes it without saying so (no
/// `Connection: close`), as a server with a short keep-alive timeout does.
async fn one_answer_per_connection_upstream(
    after: AfterAnswer,
) -> Result<(std::net::SocketAddr, Arc<AtomicUsize>), std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                match after {
                    AfterAnswer::CloseWhenIdle => tokio::time::sleep(Duration::from_millis(30)).await,
                    AfterAnswer::DropNextRequest => {
                        let _ = stream.read(&mut buf).await;
                    }
                }
            });
        }
    });
    Ok((addr, accepted))
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_upstream_is_not_an_error() -> TestResult {
    let (addr, accepted) = one_answer_per_connection_upstream(AfterAnswer::CloseWhenIdle).await?;
    let p = Portico::start(&reverse_config(&[format!("\"{addr}\"")], "")).await;
    let web = p.addr("web").await;
    for i in 0..20 {
        let answer = get(web, &format!("/{i}")).await?;
        assert_eq!(answer.status, 200, "request {i}: {:?}", answer.body);
        // Let the upstream close the connection the proxy has just pooled.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20, "each request needed a new connection");
    Ok(())
}

#[tokio::test]
async fn an_idempotent_request_whose_pooled_connection_is_lost_goes_again_on_a_new_one() -> TestResult {
    let (addr, accepted) = one_answer_per_connection_upstream(AfterAnswer::DropNextRequest).await?;
    // No retries: the replay after a lost pooled connection is not a retry. Two workers, so exactly two
    // requests find no pooled connection.
    let p = Portico::start_with_workers(&reverse_config(&[format!("\"{addr}\"")], "retries = 0"), 2).await;
    let web = p.addr("web").await;
    for i in 0..10 {
        let answer = get(web, &format!("/{i}")).await?;
        assert_eq!(answer.status, 200, "GET {i}: {:?}", answer.body);
    }
    // The first request opened a connection; each later one lost its pooled connection and opened another.
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    // The first request on each of the two workers found no pooled connection; the other 8 were replayed.
    let metrics = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    let replays = r#"portico_upstream_pooled_connection_replays_total{upstream="app"} 8"#;
    assert!(metrics.contains(replays), "missing {replays} in\n{metrics}");
    // A request with a body is not idempotent and is not sent twice: the client gets the 502.
    let answer = send(web, "POST", "/order", &[], "one order").await?;
    assert_eq!(answer.status, 502, "{:?}", answer.body);
    Ok(())
}
