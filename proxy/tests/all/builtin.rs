//! The bundled `builtin:router` and `builtin:balancer` through a real Portico and real upstreams: exact smooth
//! WRR, ring-hash stickiness and minimal movement when an endpoint leaves, least-request steering, weighted and
//! sticky splits, prefix stripping, retries re-picking, and refusal of bad configurations.

use crate::support::*;
use std::collections::HashMap;
use std::time::Duration;

fn endpoints(ups: &[&TestUpstream], weights: &[u32]) -> String {
    ups.iter()
        .zip(weights)
        .map(|(u, w)| format!("{{ address = \"{}\", weight = {w} }}", u.addr))
        .collect::<Vec<_>>()
        .join(", ")
}

fn balanced(ups: &[&TestUpstream], weights: &[u32], balancer: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"
filters = ["lb"]

[[upstream]]
name = "app"
endpoints = [{}]
{extra}

[[plugin]]
name = "lb"
wasm = "builtin:balancer"
instances = 1
# The tests check exact sequences: a generous deadline keeps a CPU-starved test machine from recreating the
# instance (and its balancer state) mid-test.
cpu_limit = "2s"
config = {balancer}
"#,
        endpoints(ups, weights)
    )
}

#[tokio::test]
async fn weighted_round_robin_interleaves_5_1_1_exactly() -> TestResult {
    let (a, b, c) = (TestUpstream::start("a").await, TestUpstream::start("b").await, TestUpstream::start("c").await);
    let p = Portico::start(&balanced(&[&a, &b, &c], &[5, 1, 1], r#"{ policy = "weighted_round_robin" }"#, "")).await;
    let web = p.addr("web").await;
    let mut sequence = String::new();
    for _ in 0..7 {
        sequence.push_str(get(web, "/").await?.header("x-upstream"));
    }
    // nginx's sequence; b and c tie at the third pick and the balancer breaks ties by address order.
    assert!(sequence == "aabacaa" || sequence == "aacabaa", "smooth: interleaved, not burst: {sequence}");
    for _ in 0..693 {
        get(web, "/").await?;
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (500, 100, 100));
    Ok(())
}

/// Sends 300 keyed users, removes e2 by reload, and returns (users that were on e2, users of other endpoints
/// that moved anyway).
async fn key_movement(policy: &str) -> Result<(usize, usize), Box<dyn std::error::Error + Send + Sync>> {
    let ups: Vec<TestUpstream> = futures_util::future::join_all(
        (0..5).map(|i| TestUpstream::start_with(["e0", "e1", "e2", "e3", "e4"][i], Behavior::Echo)),
    )
    .await;
    let all: Vec<&TestUpstream> = ups.iter().collect();
    let p = Portico::start(&balanced(&all, &[1; 5], policy, "")).await;
    let web = p.addr("web").await;
    let mut before = HashMap::new();
    for user in 0..300 {
        let who = format!("user-{user}");
        let first = send(web, "GET", "/", &[("x-user", &who)], "").await?.header("x-upstream").to_string();
        let again = send(web, "GET", "/", &[("x-user", &who)], "").await?.header("x-upstream").to_string();
        assert_eq!(first, again, "the same key lands on the same endpoint");
        before.insert(who, first);
    }
    p.rewrite(&balanced(&[&ups[0], &ups[1], &ups[3], &ups[4]], &[1; 4], policy, ""));
    assert_eq!(send(p.admin, "POST", "/config/reload", &[], "").await?.status, 200);
    let mut moved_elsewhere = 0;
    for (who, was) in &before {
        let now = send(web, "GET", "/", &[("x-user", who)], "").await?.header("x-upstream").to_string();
        if was == "e2" {
            assert_ne!(now, "e2");
        } else if &now != was {
            moved_elsewhere += 1;
        }
    }
    Ok((before.values().filter(|v| *v == "e2").count(), moved_elsewhere))
}

#[tokio::test]
async fn ring_hash_keeps_users_and_moves_only_the_removed_endpoints_keys() -> TestResult {
    let (on_removed, moved) = key_movement(r#"{ policy = "ring_hash", hash_on = "header:x-user" }"#).await?;
    assert!(on_removed > 20, "e2 held a fair share of keys ({on_removed})");
    assert_eq!(moved, 0, "keys of endpoints that stayed did not move");
    Ok(())
}

#[tokio::test]
async fn maglev_moves_little_beyond_the_removed_endpoints_keys() -> TestResult {
    let (on_removed, moved) = key_movement(r#"{ policy = "maglev", hash_on = "header:x-user" }"#).await?;
    assert!(on_removed > 20, "e2 held a fair share of keys ({on_removed})");
    // Maglev trades a little disruption for balance: at most ~3 % of the other keys may move.
    assert!(moved <= 8, "{moved} of ~240 keys of untouched endpoints moved");
    Ok(())
}

#[tokio::test]
async fn with_every_endpoint_unhealthy_the_balancer_yields_a_prompt_503() -> TestResult {
    let (a, b) = (
        TestUpstream::start_with("a", Behavior::SickHealth).await,
        TestUpstream::start_with("b", Behavior::SickHealth).await,
    );
    let health = r#"health_check = { path = "/health", interval = "100ms", timeout = "100ms", unhealthy_threshold = 1, healthy_threshold = 1 }"#;
    let p = Portico::start(&balanced(&[&a, &b], &[1, 1], r#"{ policy = "least_request" }"#, health)).await;
    // Wait for the health checks to mark both down (not a fixed sleep), then the answer is 503 without
    // trying an endpoint: no_healthy_upstream and no hit are what "prompt" means, not a wall-clock bound.
    let down = eventually_async_admin_all_unhealthy(p.admin).await;
    assert!(down, "health checks mark both endpoints unhealthy");
    let answer = get(p.addr("web").await, "/").await?;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"], "no_healthy_upstream");
    assert_eq!(a.hits() + b.hits(), 0);
    Ok(())
}

#[tokio::test]
async fn least_request_steers_away_from_a_slow_endpoint() -> TestResult {
    let slow = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_millis(300))).await;
    let (f1, f2) = (TestUpstream::start("fast1").await, TestUpstream::start("fast2").await);
    let p = Portico::start(&balanced(&[&slow, &f1, &f2], &[1, 1, 1], r#"{ policy = "least_request" }"#, "")).await;
    let web = p.addr("web").await;
    let mut tasks = Vec::new();
    for worker in 0..6 {
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let _ = get(web, &format!("/{worker}/{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let total = slow.hits() + f1.hits() + f2.hits();
    assert_eq!(total, 240);
    assert!(slow.hits() * 10 < total, "the slow endpoint got {} of {total}", slow.hits());
    Ok(())
}

#[tokio::test]
async fn a_retry_re_picks_another_endpoint_even_for_a_hashed_key() -> TestResult {
    let ups: Vec<TestUpstream> =
        futures_util::future::join_all((0..3).map(|i| TestUpstream::start(["e0", "e1", "e2"][i]))).await;
    let all: Vec<&TestUpstream> = ups.iter().collect();
    let p = Portico::start(&balanced(
        &all,
        &[1; 3],
        r#"{ policy = "ring_hash", hash_on = "header:x-user" }"#,
        "retries = 1",
    ))
    .await;
    let web = p.addr("web").await;
    let home = send(web, "GET", "/", &[("x-user", "alice")], "").await?.header("x-upstream").to_string();
    let failing = ups.iter().find(|u| u.hits() == 1).ok_or("no endpoint served alice")?;
    assert_eq!(failing.hits(), 1);
    failing.set(Behavior::Status(503));
    let answer = send(web, "GET", "/", &[("x-user", "alice")], "").await?;
    assert_eq!(answer.status, 200, "the retry went to another endpoint");
    assert_ne!(answer.header("x-upstream"), home);
    Ok(())
}

fn routed(ups: &[(&str, &TestUpstream)], routes: &str) -> String {
    let mut text = r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "stable"
filters = ["router"]

[[plugin]]
name = "router"
wasm = "builtin:router"
cpu_limit = "2s"
"#
    .to_string();
    text.push_str(&format!("config = {{ routes = [{routes}] }}\n"));
    for (name, u) in ups {
        text.push_str(&format!("\n[[upstream]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n", u.addr));
    }
    text
}

#[tokio::test]
async fn the_router_matches_splits_sticks_and_strips() -> TestResult {
    let (stable, canary, api) =
        (TestUpstream::start("stable").await, TestUpstream::start("canary").await, TestUpstream::start("api").await);
    let routes = r#"
  { match = { headers = { x-canary = "1" } }, upstream = "canary" },
  { match = { path_prefix = "/api/" }, upstream = "api", strip_prefix = true },
  { match = { path_prefix = "/shop/" }, split = [{ upstream = "stable", weight = 90 }, { upstream = "canary", weight = 10 }], sticky = "header:x-user" },
  { match = { path_prefix = "/" }, upstream = "stable" },
"#;
    let p = Portico::start(&routed(&[("stable", &stable), ("canary", &canary), ("api", &api)], routes)).await;
    let web = p.addr("web").await;

    let a = send(web, "GET", "/api/v1/items?q=2", &[], "").await?;
    assert_eq!(a.header("x-upstream"), "api");
    assert_eq!(a.json()["path"], "/v1/items?q=2", "prefix stripped, query kept");
    assert_eq!(
        send(web, "GET", "/api/x", &[("x-canary", "1")], "").await?.header("x-upstream"),
        "canary",
        "first match wins"
    );
    assert_eq!(get(web, "/other").await?.header("x-upstream"), "stable");

    let mut to_canary = 0;
    for user in 0..1000 {
        let who = format!("u{user}");
        let first = send(web, "GET", "/shop/cart", &[("x-user", &who)], "").await?.header("x-upstream").to_string();
        if user < 50 {
            let again = send(web, "GET", "/shop/cart", &[("x-user", &who)], "").await?.header("x-upstream").to_string();
            assert_eq!(first, again, "a sticky split keeps a user on one side");
        }
        if first == "canary" {
            to_canary += 1;
        }
    }
    // 10 % of 1000: mean 100, sd ≈ 9.5; ±5 sd.
    assert!((52..=148).contains(&to_canary), "{to_canary} of 1000 users went to the canary");
    Ok(())
}

#[tokio::test]
async fn a_router_naming_an_unknown_upstream_is_refused_at_load() -> TestResult {
    let stable = TestUpstream::start("stable").await;
    let text = routed(&[("stable", &stable)], r#"{ match = { path_prefix = "/" }, upstream = "nowhere" }"#);
    let issues = match portico::config::parse(&text) {
        Ok(_) => return Err("a route to an unknown upstream was accepted".into()),
        Err(issues) => issues,
    };
    let text = format!("{issues:?}");
    assert!(text.contains("nowhere") && text.contains("plugin[0].config"), "{text}");

    let bad_weights = routed(
        &[("stable", &stable)],
        r#"{ match = { path_prefix = "/" }, split = [{ upstream = "stable", weight = 0 }] }"#,
    );
    let config = portico::config::parse(&bad_weights).map_err(|e| format!("{e:?}"))?;
    let refused = match portico::Server::start(config, Duration::from_secs(1)).await {
        Ok(_) => return Err("a split with zero total weight started".into()),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("weights"), "{refused}");
    Ok(())
}

/// The sum of `portico_plugin_callbacks_total{plugin=NAME}` in a scrape.
fn callbacks(scrape: &str, plugin: &str) -> u64 {
    let label = format!("plugin=\"{plugin}\"");
    scrape
        .lines()
        .filter(|l| l.starts_with("portico_plugin_callbacks_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn the_router_and_balancer_cost_one_wasm_call_each_per_request() -> TestResult {
    // Every exported per-request callback is a wasm call on every request; the bundled plugins export only
    // the one each needs (request headers for the router, the pick for the balancer), and the host skips
    // what a module does not export, including the response phases and `upstream.address`.
    let (a, b) = (TestUpstream::start("a").await, TestUpstream::start("b").await);
    // The balancer-only configuration, with the router put in front of the balancer.
    let text = balanced(&[&a, &b], &[1, 1], r#"{ policy = "round_robin" }"#, "")
        .replace(r#"filters = ["lb"]"#, r#"filters = ["router", "lb"]"#)
        + r#"
[[plugin]]
name = "router"
wasm = "builtin:router"
cpu_limit = "2s"
config = { routes = [{ match = { path_prefix = "/" }, upstream = "app" }] }
"#;
    let p = Portico::start(&text).await;
    let web = p.addr("web").await;
    get(web, "/").await?;
    let before = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    for _ in 0..50 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    let after = String::from_utf8(get(p.admin, "/metrics").await?.body.to_vec())?;
    assert_eq!(callbacks(&after, "router") - callbacks(&before, "router"), 50, "{after}");
    assert_eq!(callbacks(&after, "lb") - callbacks(&before, "lb"), 50, "{after}");
    assert_eq!(a.hits() + b.hits(), 51);
    assert_eq!(a.hits().abs_diff(b.hits()), 1, "round robin alternates");
    Ok(())
}
