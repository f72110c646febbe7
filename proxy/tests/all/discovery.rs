//! Service discovery through a real Portico: names served by a DNS server the test runs on loopback (A records
//! that change under load, SRV records with ports and weights, a server that stops answering), and endpoints
//! that register themselves through the admin API, renew, and expire.

use crate::support::dns::{DnsServer, Srv};
use crate::support::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Long enough that only a hang trips it.
const PATIENCE: Duration = Duration::from_secs(30);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn dns_config(dns: &DnsServer, endpoints: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[dns]
servers = ["{}"]
timeout = "300ms"

[[listener]]
name = "web"
listen = "127.0.0.1:0"
upstream = "app"

[[upstream]]
name = "app"
endpoints = [{endpoints}]
{extra}
"#,
        dns.addr
    )
}

async fn group(admin: SocketAddr) -> serde_json::Value {
    let list = get(admin, "/upstreams").await.map(|a| a.json()).unwrap_or_default();
    list.as_array().and_then(|l| l.iter().find(|g| g["name"] == "app").cloned()).unwrap_or_default()
}

/// The endpoints of group `app` as (address, status) pairs.
async fn endpoints(admin: SocketAddr) -> Vec<(String, String)> {
    let g = group(admin).await;
    let list = g["endpoints"].as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|e| (e["address"].as_str().unwrap_or("").to_string(), e["status"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn wait_for<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Steady traffic from a few clients until stopped: (answered 200, failed).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(web: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match get(web, "/").await {
                            Ok(a) if a.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.push(format!("{other:?}"));
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    errors
                })
            })
            .collect();
        Load { stop, ok, failed, tasks }
    }

    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await.unwrap_or_default());
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), errors)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_that_changes_its_addresses_moves_traffic_with_no_failed_request() -> TestResult {
    let dns = DnsServer::start().await;
    let (upstreams, port) = TestUpstream::on_one_port(&["a", "b"]).await;
    let (a, b) = (&upstreams[0], &upstreams[1]);
    dns.set_addresses("app.test", &[ip("127.0.0.2")]);
    let config = dns_config(
        &dns,
        &format!(r#"{{ address = "app.test:{port}", resolve = "200ms" }}"#),
        "health_check = { interval = \"1s\", timeout = \"500ms\" }",
    );
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    let (addr_a, addr_b) = (a.addr.to_string(), b.addr.to_string());
    let only = |wanted: &str| {
        let wanted = wanted.to_string();
        move |eps: Vec<(String, String)>| eps.len() == 1 && eps[0] == (wanted.clone(), "healthy".to_string())
    };
    assert!(wait_for(|| async { only(&addr_a)(endpoints(admin).await) }).await, "{}", group(admin).await);

    let load = Load::start(web, 4);
    assert!(wait_for(|| async { a.hits() > 20 }).await, "traffic reaches a");

    // Wholesale change: the name now stands for b only. b waits for its first probe; a serves until then.
    dns.set_addresses("app.test", &[ip("127.0.0.3")]);
    assert!(wait_for(|| async { only(&addr_b)(endpoints(admin).await) }).await, "{}", group(admin).await);
    let b_before = b.hits();
    assert!(wait_for(|| async { b.hits() > b_before + 20 }).await, "traffic follows to b");
    // a left the group: no new request reaches it.
    let a_after = a.hits();
    let b_now = b.hits();
    assert!(wait_for(|| async { b.hits() > b_now + 20 }).await);
    assert_eq!(a.hits(), a_after, "a takes no request once its address left the name");

    // Both addresses: both take traffic.
    dns.set_addresses("app.test", &[ip("127.0.0.2"), ip("127.0.0.3")]);
    let a_back = a.hits();
    assert!(wait_for(|| async { a.hits() > a_back + 10 }).await, "{}", group(admin).await);

    let (ok, failed, errors) = load.finish().await;
    assert!(ok > 100, "traffic flowed ({ok})");
    assert_eq!(failed, 0, "no request failed while the name moved ({ok} succeeded): {errors:?}");
    let g = group(admin).await;
    assert_eq!(g["discovery"][0]["name"], format!("app.test:{port}"), "{g}");
    assert_eq!(g["discovery"][0]["error"], serde_json::Value::Null, "{g}");
    assert!(g["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["source"] == "dns")), "{g}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resolver_that_stops_answering_keeps_the_last_known_addresses() -> TestResult {
    let dns = DnsServer::start().await;
    let (upstreams, port) = TestUpstream::on_one_port(&["a"]).await;
    dns.set_addresses("app.test", &[ip("127.0.0.2")]);
    let config = dns_config(&dns, &format!(r#"{{ address = "app.test:{port}", resolve = "200ms" }}"#), "");
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    assert_eq!(get(web, "/").await?.status, 200, "the name was resolved before Portico served");
    let expected = vec![(upstreams[0].addr.to_string(), "healthy".to_string())];
    assert!(wait_for(|| async { endpoints(admin).await == expected }).await, "{}", group(admin).await);

    dns.set_silent(true);
    let asked = dns.queries();
    let reported = wait_for(|| async { group(admin).await["discovery"][0]["error"].is_string() }).await;
    assert!(reported, "the failure is reported: {}", group(admin).await);
    assert!(dns.queries() > asked, "Portico kept asking");
    assert_eq!(endpoints(admin).await, expected, "the last known set is kept");
    for _ in 0..10 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    let metrics = String::from_utf8_lossy(&get(admin, "/metrics").await?.body).into_owned();
    let failing = format!("portico_discovery_resolve_failing{{name=\"app.test:{port}\",upstream=\"app\"}} 1");
    assert!(metrics.contains(&failing), "{metrics}");

    dns.set_silent(false);
    let cleared = wait_for(|| async { group(admin).await["discovery"][0]["error"].is_null() }).await;
    assert!(cleared, "the error clears once the server answers: {}", group(admin).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connect_failure_re_resolves_the_name_before_its_interval() -> TestResult {
    let dns = DnsServer::start().await;
    let (upstreams, port) = TestUpstream::on_one_port(&["a", "b"]).await;
    let (a, b) = (&upstreams[0], &upstreams[1]);
    dns.set_addresses("app.test", &[ip("127.0.0.2")]);
    // Re-resolved hourly: only the connect failure can make Portico ask again within the test.
    let config = dns_config(&dns, &format!(r#"{{ address = "app.test:{port}", resolve = "1h" }}"#), "");
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    assert!(wait_for(|| async { endpoints(admin).await.len() == 1 }).await, "{}", group(admin).await);
    assert_eq!(get(web, "/").await?.header("x-upstream"), "a");

    // The service moves: the name points at b, and a goes away.
    dns.set_addresses("app.test", &[ip("127.0.0.3")]);
    a.kill();
    let asked = dns.queries();
    let moved =
        wait_for(|| async { get(web, "/").await.is_ok_and(|r| r.status == 200 && r.header("x-upstream") == "b") })
            .await;
    assert!(moved, "traffic reaches b after the connect failures: {}", group(admin).await);
    assert!(dns.queries() > asked, "the name was asked again");
    assert!(b.hits() > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn srv_records_give_ports_and_weights() -> TestResult {
    let dns = DnsServer::start().await;
    // b's target has only an AAAA record.
    let (a, b, backup) = (
        TestUpstream::start("a").await,
        TestUpstream::start_at("b", "[::1]:0").await,
        TestUpstream::start("backup").await,
    );
    let record = |priority, weight, port, target: &str| Srv { priority, weight, port, target: target.into() };
    dns.set_addresses("a.test", &[ip("127.0.0.1")]);
    dns.set_addresses("b.test", &[ip("::1")]);
    dns.set_srv(
        "_http._tcp.app.test",
        &[
            record(10, 3, a.addr.port(), "a.test"),
            record(10, 1, b.addr.port(), "b.test"),
            record(20, 5, backup.addr.port(), "a.test"),
        ],
    );
    let config = dns_config(&dns, r#"{ srv = "_http._tcp.app.test", resolve = "200ms" }"#, "");
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    let weights = || async {
        let g = group(admin).await;
        let list = g["endpoints"].as_array().cloned().unwrap_or_default();
        let mut pairs: Vec<(String, u64)> = list
            .iter()
            .map(|e| (e["address"].as_str().unwrap_or("").to_string(), e["weight"].as_u64().unwrap_or(0)))
            .collect();
        pairs.sort();
        pairs
    };
    let mut expected = vec![(a.addr.to_string(), 3), (b.addr.to_string(), 1)];
    expected.sort();
    assert!(wait_for(|| async { weights().await == expected }).await, "{}", group(admin).await);

    // Smooth weighted round robin over 3:1, one request at a time: exactly 30 and 10 of 40.
    for _ in 0..40 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!((a.hits(), b.hits(), backup.hits()), (30, 10, 0), "the backup priority takes nothing");

    // New weights in the records reach the endpoints.
    dns.set_srv(
        "_http._tcp.app.test",
        &[record(10, 1, a.addr.port(), "a.test"), record(10, 0, b.addr.port(), "b.test")],
    );
    let mut even = vec![(a.addr.to_string(), 1), (b.addr.to_string(), 1)];
    even.sort();
    assert!(wait_for(|| async { weights().await == even }).await, "weight 0 counts as 1: {}", group(admin).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_endpoint_takes_traffic_until_its_ttl_passes_unrenewed() -> TestResult {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let config = reverse_config(&quoted(&[&a]), "")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"", "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"t0ken\"");
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    let auth = [("authorization", "Bearer t0ken")];
    let register = |body: String| async move { send(admin, "POST", "/upstreams/app/endpoints", &auth, &body).await };
    let body_b = format!(r#"{{"address": "{}", "ttl": "3s"}}"#, b.addr);

    // The admin token is needed; bad input is refused with the reason and changes nothing.
    let anonymous = send(admin, "POST", "/upstreams/app/endpoints", &[], &body_b).await?;
    assert_eq!(anonymous.status, 401);
    for (body, status, reason) in [
        (r#"{"address": "b.internal:80"}"#.to_string(), 400, "ip:port"),
        (format!(r#"{{"address": "{}", "weight": 0}}"#, b.addr), 400, "1..=1000"),
        (format!(r#"{{"address": "{}", "ttl": "10ms"}}"#, b.addr), 400, "shorter than 1s"),
        (format!(r#"{{"address": "{}", "ttl": "soon"}}"#, b.addr), 400, "soon"),
        (format!(r#"{{"address": "{}"}}"#, a.addr), 409, "from static"),
        ("[]".to_string(), 400, "body must be"),
    ] {
        let answer = register(body.clone()).await?;
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(answer.status.as_u16(), status, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text}");
    }
    let unknown = send(admin, "POST", "/upstreams/nope/endpoints", &auth, &body_b).await?;
    assert_eq!(unknown.status, 404);
    assert_eq!(endpoints(admin).await.len(), 1, "nothing changed");

    // Registered: it takes traffic, and heartbeats keep it past its TTL.
    let answer = register(body_b.clone()).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert_eq!(answer.json()["status"], "registered");
    let listed = answer.json()["upstream"]["endpoints"].as_array().cloned().unwrap_or_default();
    let entry = listed.iter().find(|e| e["address"] == b.addr.to_string()).cloned().unwrap_or_default();
    assert_eq!((entry["source"].as_str(), entry["ttl"].as_str()), (Some("registered"), Some("3s")), "{entry}");
    assert!(wait_for(|| async { get(web, "/").await.is_ok() && b.hits() > 5 }).await, "b takes traffic");
    let metrics = String::from_utf8_lossy(&get(admin, "/metrics").await?.body).into_owned();
    assert!(metrics.contains(&format!("endpoint=\"{}\"", b.addr)), "{metrics}");
    let renewed_until = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < renewed_until {
        let answer = register(body_b.clone()).await?;
        assert_eq!(answer.json()["status"], "renewed", "{}", String::from_utf8_lossy(&answer.body));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(endpoints(admin).await.len(), 2, "heartbeats kept it past its 3 s ttl");

    // A registration without a TTL survives a reload of the unchanged upstream.
    let c = TestUpstream::start("c").await;
    let answer = register(format!(r#"{{"address": "{}", "weight": 2}}"#, c.addr)).await?;
    assert_eq!(answer.status, 200);
    let reloaded = send(admin, "POST", "/config/reload", &auth, "").await?;
    assert_eq!(reloaded.status, 200, "{}", String::from_utf8_lossy(&reloaded.body));
    let after: Vec<String> = endpoints(admin).await.into_iter().map(|(address, _)| address).collect();
    assert!(after.contains(&c.addr.to_string()), "{after:?}");
    // Deregistered: gone; the configured endpoint cannot be deregistered, an unknown one is not found.
    let path = format!("/upstreams/app/endpoints/{}", c.addr);
    assert_eq!(send(admin, "DELETE", &path, &auth, "").await?.status, 200);
    assert_eq!(send(admin, "DELETE", &path, &auth, "").await?.status, 404);
    let static_path = format!("/upstreams/app/endpoints/{}", a.addr);
    assert_eq!(send(admin, "DELETE", &static_path, &auth, "").await?.status, 409);

    // It stops renewing: once the TTL passes it leaves the group, and takes no more traffic.
    let gone = wait_for(|| async { endpoints(admin).await.len() == 1 }).await;
    assert!(gone, "the registration expired: {}", group(admin).await);
    let b_hits = b.hits();
    for _ in 0..20 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!(b.hits(), b_hits, "an expired endpoint takes no request");
    let metrics = String::from_utf8_lossy(&get(admin, "/metrics").await?.body).into_owned();
    assert!(metrics.contains("portico_registrations_expired_total{upstream=\"app\"} 1"), "{metrics}");
    assert!(!metrics.contains(&format!("endpoint=\"{}\"", b.addr)), "its gauges are gone: {metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_balancing_plugin_sees_the_set_change_through_its_version() -> TestResult {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    // The bundled balancer keeps its tables per candidates_version: had the version not changed with the set,
    // it would go on choosing among the old endpoints only (and a broken plugin answers 503: fail closed).
    let config = reverse_config(&quoted(&[&a]), "")
        .replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"lb\"]\n")
        + r#"
[[plugin]]
name = "lb"
wasm = "builtin:balancer"
instances = 1
cpu_limit = "2s"
config = { policy = "round_robin" }
"#;
    let portico = Portico::start(&config).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    for _ in 0..6 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (6, 0));

    let body = format!(r#"{{"address": "{}"}}"#, b.addr);
    assert_eq!(send(admin, "POST", "/upstreams/app/endpoints", &[], &body).await?.status, 200);
    for _ in 0..10 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!(b.hits(), 5, "round robin over the new set of two");

    let path = format!("/upstreams/app/endpoints/{}", b.addr);
    assert_eq!(send(admin, "DELETE", &path, &[], "").await?.status, 200);
    for _ in 0..6 {
        assert_eq!(get(web, "/").await?.status, 200);
    }
    assert_eq!(b.hits(), 5, "the plugin no longer offers the deregistered endpoint");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deregistered_endpoint_finishes_its_in_flight_request() -> TestResult {
    // A group that only registrations fill.
    let portico = Portico::start(&reverse_config(&[], "")).await;
    let (web, admin) = (portico.addr("web").await, portico.admin);
    assert_eq!(get(web, "/").await?.status, 503, "nothing registered yet");

    let slow = TestUpstream::start_with("slow", Behavior::Delay(Duration::from_secs(2))).await;
    let body = format!(r#"{{"address": "{}"}}"#, slow.addr);
    assert_eq!(send(admin, "POST", "/upstreams/app/endpoints", &[], &body).await?.status, 200);
    let in_flight = tokio::spawn(async move { get(web, "/").await });
    assert!(wait_for(|| async { slow.hits() == 1 }).await, "the request reached the endpoint");

    let path = format!("/upstreams/app/endpoints/{}", slow.addr);
    let answer = send(admin, "DELETE", &path, &[], "").await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let g = answer.json()["upstream"].clone();
    assert_eq!(g["endpoints"].as_array().map(Vec::len), Some(0), "{g}");
    assert_eq!(g["draining"][0]["address"], slow.addr.to_string(), "{g}");
    assert_eq!(g["draining"][0]["active_requests"], 1, "{g}");
    assert_eq!(get(web, "/").await?.status, 503, "no new request goes to it");

    let finished = in_flight.await??;
    assert_eq!((finished.status.as_u16(), finished.header("x-upstream")), (200, "slow"), "the in-flight one finished");
    assert!(wait_for(|| async { group(admin).await["draining"].as_array().is_some_and(Vec::is_empty) }).await);
    Ok(())
}
