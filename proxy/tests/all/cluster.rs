//! Three real `portico` processes forming a Raft cluster on 127.0.0.1 (each node's listeners on its own
//! loopback address, 127.0.0.1–3, through `bind_address`): failover after `kill -9` of the leader under
//! config writes and traffic, catch-up after restart, plugin replication and rollback, and a node cut off by the
//! fault-injection switch.

use crate::plugins::{marking_plugin, reqwest_put};
use crate::support::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portico");
const ELECTION: Duration = Duration::from_secs(1);

/// The cluster tests run one at a time: each starts three or four processes, and timing (elections) is part of
/// what they check, so they should not starve each other of CPU.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) struct Node {
    pub(crate) id: u64,
    config: PathBuf,
    log: PathBuf,
    pub(crate) admin: SocketAddr,
    pub(crate) web: SocketAddr,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    pub(crate) fn spawn(&mut self) -> Result<(), std::io::Error> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--grace", "1s", "-c"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no drain, no goodbye to the peers.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) async fn status(&self) -> Option<serde_json::Value> {
        get(self.admin, "/cluster").await.ok().filter(|a| a.status == 200).map(|a| a.json())
    }

    /// Member ids as this node sees them (empty when it does not answer).
    async fn members(&self) -> Vec<u64> {
        let status = self.status().await.unwrap_or_default();
        status["members"].as_array().map_or_else(Vec::new, |m| m.iter().filter_map(|m| m["node_id"].as_u64()).collect())
    }

    async fn weight_of(&self, endpoint: &str) -> Option<u64> {
        let answer = get(self.admin, "/upstreams").await.ok()?;
        let list = answer.json();
        let app = list.as_array()?.iter().find(|u| u["name"] == "app")?.clone();
        app["endpoints"].as_array()?.iter().find(|e| e["address"] == endpoint)?["weight"].as_u64()
    }

    async fn plugin_sha(&self) -> Option<String> {
        let answer = get(self.admin, "/plugins").await.ok()?;
        answer.json().as_array()?.first()?["sha256"].as_str().map(str::to_string)
    }

    pub(crate) async fn marker(&self) -> Option<String> {
        let answer = get(self.web, "/").await.ok().filter(|a| a.status == 200)?;
        Some(answer.header("x-wat").to_string())
    }

    pub(crate) fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Writes three node configs sharing one listener/upstream/plugin section, and starts the nodes.
async fn start_cluster(
    dir: &Path,
    endpoints: &[String],
    hook: bool,
) -> Result<Vec<Node>, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::write(dir.join("mark.wasm"), marking_plugin("v1"))?;
    let [web, c1, c2, c3, a1, a2, a3] = free_ports()?;
    let (cluster_ports, admin_ports) = ([c1, c2, c3], [a1, a2, a3]);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let admin = admin_ports[(id - 1) as usize];
        let peers: Vec<String> = (1..=3u64)
            .filter(|p| *p != id)
            .map(|p| format!("{p} = \"127.0.0.1:{}\"", cluster_ports[(p - 1) as usize]))
            .collect();
        let hooks = if hook {
            format!(
                "on_become_leader = [\"sh\", \"-c\", \"echo become $PORTICO_NODE_ID >> {0}/leader.log\"]\non_lose_leadership = [\"sh\", \"-c\", \"echo lose $PORTICO_NODE_ID >> {0}/leader.log\"]\n",
                dir.display()
            )
        } else {
            String::new()
        };
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:{admin}"

[cluster]
node_id = {id}
listen = "127.0.0.1:{cport}"
peers = {{ {peers} }}
data_dir = "node{id}"
heartbeat_interval = "100ms"
election_timeout = "1s"
# Generous, so a write or membership change waiting out an election on a busy machine is not refused.
write_timeout = "30s"
token = "s3cret"
bind_address = "127.0.0.{id}"
fault_injection = true
{hooks}
[[listener]]
name = "web"
listen = "0.0.0.0:{web}"
upstream = "app"
filters = ["mark"]

[[upstream]]
name = "app"
endpoints = [{endpoints}]

[[plugin]]
name = "mark"
wasm = "mark.wasm"
fail = "open"
"#,
            cport = cluster_ports[(id - 1) as usize],
            peers = peers.join(", "),
            endpoints = endpoints.join(", "),
        );
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, config)?;
        let mut node = Node {
            id,
            config: path,
            log: dir.join(format!("node{id}.log")),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            web: SocketAddr::from(([127, 0, 0, id as u8], web)),
            child: None,
        };
        node.spawn()?;
        nodes.push(node);
    }
    for node in &nodes {
        let mut up = false;
        for _ in 0..400 {
            if get(node.admin, "/healthz").await.is_ok_and(|a| a.status == 200) {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !up {
            return Err(format!("node {} did not come up: {}", node.id, node.logs()).into());
        }
    }
    Ok(nodes)
}

/// Three nodes in front of one upstream, with a leader a quorum confirmed. Holds the one-cluster-at-a-time turn
/// until dropped; fields drop in order, so the nodes are killed before the turn passes on.
pub(crate) struct ThreeNodes {
    pub(crate) nodes: Vec<Node>,
    pub(crate) leader: u64,
    dir: tempfile::TempDir,
    _upstream: TestUpstream,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

pub(crate) async fn three_nodes(hooks: bool) -> Result<ThreeNodes, Box<dyn std::error::Error + Send + Sync>> {
    let turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let upstream = TestUpstream::start("a").await;
    let dir = tempfile::tempdir()?;
    let nodes = start_cluster(dir.path(), &quoted(&[&upstream]), hooks).await?;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = confirmed_leader(&all, Duration::from_secs(60)).await.ok_or("no leader elected")?;
    Ok(ThreeNodes { nodes, leader, dir, _upstream: upstream, _turn: turn })
}

/// The id of a node that reports itself leader confirmed by a quorum, among `nodes`.
pub(crate) async fn confirmed_leader(nodes: &[&Node], within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for node in nodes {
            if node.status().await.is_some_and(|s| s["leader_confirmed"] == true) {
                return Some(node.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub(crate) async fn eventually_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_under_writes_loses_no_acknowledged_write_and_no_request() -> TestResult {
    let _turn = ONE_CLUSTER_AT_A_TIME.lock().await;
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let dir = tempfile::tempdir()?;
    let endpoint_a = a.addr.to_string();
    let mut nodes = start_cluster(dir.path(), &quoted(&[&a, &b]), true).await?;
    let all: Vec<&Node> = nodes.iter().collect();
    let leader = confirmed_leader(&all, Duration::from_secs(60)).await.ok_or("no leader elected")?;
    let (survivors, victim): (Vec<&Node>, Vec<&Node>) = all.iter().partition(|n| n.id != leader);
    let victim_index = nodes.iter().position(|n| n.id == leader).ok_or("victim")?;
    assert_eq!(victim.len(), 1);

    // Traffic through the two survivors for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let webs: Vec<SocketAddr> = survivors.iter().map(|n| n.web).collect();
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for web in &webs {
                    match get(*web, "/").await {
                        Ok(answer) if answer.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
                // Steady traffic (about 150 requests/s per node), not a CPU hog competing with Raft's timers.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Config writes through a survivor: weight n for endpoint a, n = 1, 2, 3, …; remember what was acknowledged.
    let writer_admin = survivors[0].admin;
    let stop_writes = Arc::new(AtomicBool::new(false));
    let acked: Arc<parking_lot::Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
    let writer = {
        let (stop_writes, acked, endpoint) = (stop_writes.clone(), acked.clone(), endpoint_a.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop_writes.load(Ordering::Relaxed) {
                n += 1;
                let path = format!("/upstreams/app/endpoints/{endpoint}/weight");
                let body = format!("{{\"weight\": {n}}}");
                if let Ok(answer) = send(writer_admin, "PUT", &path, &[], &body).await {
                    if answer.status == 200 {
                        let index = answer.json()["index"].as_u64().unwrap_or(0);
                        acked.lock().push((n, index, Instant::now()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    // Writes commit while the cluster is whole: wait for a few, not for a fixed time.
    let committing = eventually_async(Duration::from_secs(30), || async { acked.lock().len() > 5 }).await;
    assert!(committing, "writes commit while the cluster is whole ({})", acked.lock().len());

    nodes[victim_index].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    // The bound only catches a hang (about 1 s is expected): the failover time is a figure to measure over
    // many runs, not a goal a busy test machine can be held to. It is printed.
    let new_leader = confirmed_leader(&survivors, ELECTION * 10).await.ok_or("no new leader")?;
    let failover = killed_at.elapsed();
    eprintln!("cluster failover: node {new_leader} confirmed leader {failover:?} after kill -9 of node {leader}");
    assert_ne!(new_leader, leader);

    // Writes resume on the new leader: wait for an acknowledgement after it was confirmed.
    let confirmed_at = killed_at + failover;
    let resumed = eventually_async(ELECTION * 10, || async {
        acked.lock().iter().filter(|(_, _, at)| *at > confirmed_at).count() >= 3
    })
    .await;
    stop_writes.store(true, Ordering::Relaxed);
    let attempted = writer.await?;
    let acked = acked.lock().clone();
    let (last_n, last_index, _) = *acked.last().ok_or("no write acknowledged")?;
    assert!(resumed, "writes resume on the new leader");

    // Every acknowledged write is on both survivors: the weights only grow, so the last acknowledged value
    // (or a later one whose answer was cut off) must be there, with the log applied at least that far.
    for node in &survivors {
        let applied = eventually_async(Duration::from_secs(30), || async {
            let weight = node.weight_of(&endpoint_a).await.unwrap_or(0);
            let index = node.status().await.and_then(|s| s["applied_index"].as_u64()).unwrap_or(0);
            weight >= last_n && weight <= attempted && index >= last_index
        })
        .await;
        assert!(applied, "node {} holds every acknowledged write (last n={last_n} index={last_index})", node.id);
    }
    stop.store(true, Ordering::Relaxed);
    load.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 50, "traffic flowed through the survivors ({ok})");
    assert_eq!(failed, 0, "no request through a survivor failed ({ok} succeeded)");

    // The old leader restarts from its data_dir and catches up.
    let final_weight = survivors[0].weight_of(&endpoint_a).await.ok_or("weight")?;
    drop(survivors);
    nodes[victim_index].spawn()?;
    let restarted = &nodes[victim_index];
    let caught_up = eventually_async(Duration::from_secs(60), || async {
        restarted.weight_of(&endpoint_a).await == Some(final_weight)
    })
    .await;
    assert!(caught_up, "the restarted node catches up: {}", restarted.logs());

    // Leader hooks fired on confirmed leadership: the first leader, then the new one.
    let hooks = std::fs::read_to_string(dir.path().join("leader.log")).unwrap_or_default();
    assert!(hooks.contains(&format!("become {leader}")), "hook log: {hooks}");
    assert!(hooks.contains(&format!("become {new_leader}")), "hook log: {hooks}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_replicate_and_a_cut_off_node_refuses_writes_and_never_serves_an_uncommitted_config() -> TestResult {
    let mut cluster = three_nodes(true).await?;
    let (nodes, leader, dir) = (&cluster.nodes, cluster.leader, &cluster.dir);

    // The bootstrap config carried the module: every node runs v1.
    for node in nodes {
        assert!(
            eventually_async(Duration::from_secs(30), || async { node.marker().await.as_deref() == Some("v1") }).await
        );
    }
    let v1_sha = nodes[0].plugin_sha().await.ok_or("sha")?;

    // PUT /config on any node: a bad file is refused with nothing proposed; a good one reaches every node
    // (here: the listener drops its filter, then gets it back).
    let file = std::fs::read_to_string(&nodes[1].config)?;
    let bad = send(
        nodes[1].admin,
        "PUT",
        "/config",
        &[],
        &file.replace("upstream = \"app\"\nfilters", "upstream = \"nope\"\nfilters"),
    )
    .await?;
    assert_eq!(bad.status, 400, "{}", String::from_utf8_lossy(&bad.body));
    let unfiltered =
        send(nodes[1].admin, "PUT", "/config", &[], &file.replace("filters = [\"mark\"]", "filters = []")).await?;
    assert_eq!(unfiltered.status, 200, "{}", String::from_utf8_lossy(&unfiltered.body));
    for node in nodes {
        let plain =
            eventually_async(Duration::from_secs(30), || async { node.marker().await.as_deref() == Some("") }).await;
        assert!(plain, "node {} applied the pushed config", node.id);
    }
    let restored = send(nodes[2].admin, "PUT", "/config", &[], &file).await?;
    assert_eq!(restored.status, 200, "{}", String::from_utf8_lossy(&restored.body));
    for node in nodes {
        assert!(
            eventually_async(Duration::from_secs(30), || async { node.marker().await.as_deref() == Some("v1") }).await
        );
    }

    // An upload through a follower reaches every node.
    let follower = nodes.iter().find(|n| n.id != leader).ok_or("follower")?;
    let answer = reqwest_put(follower.admin, "/plugins/mark", marking_plugin("v2")).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    for node in nodes {
        let v2 =
            eventually_async(Duration::from_secs(30), || async { node.marker().await.as_deref() == Some("v2") }).await;
        assert!(v2, "node {} runs the uploaded module", node.id);
    }
    // A module that does not start is refused before anything is proposed.
    let refused = reqwest_put(follower.admin, "/plugins/mark", wat::parse_str("(module)")?).await?;
    assert_eq!(refused.status, 422);

    // Cut the leader off. It refuses writes; the majority elects a leader and rolls back to v1.
    let cut = nodes.iter().find(|n| n.id == leader).ok_or("leader")?;
    let answer = send(cut.admin, "POST", "/cluster/isolate", &[], r#"{"isolated": true}"#).await?;
    assert_eq!(answer.status, 200);
    let denied = reqwest_put(cut.admin, "/plugins/mark", marking_plugin("v3")).await?;
    assert_eq!(denied.status, 503, "{}", String::from_utf8_lossy(&denied.body));
    let majority: Vec<&Node> = nodes.iter().filter(|n| n.id != leader).collect();
    let new_leader = confirmed_leader(&majority, Duration::from_secs(30)).await.ok_or("majority elects")?;
    assert_ne!(new_leader, leader);
    let rolled = send(majority[0].admin, "POST", "/plugins/mark/rollback", &[], "").await?;
    assert_eq!(rolled.status, 200, "{}", String::from_utf8_lossy(&rolled.body));
    for node in &majority {
        let v1 =
            eventually_async(Duration::from_secs(30), || async { node.marker().await.as_deref() == Some("v1") }).await;
        assert!(v1, "node {} rolled back", node.id);
    }
    // The cut-off node keeps serving the last state it saw committed: never v3 (refused), not yet the rollback.
    for _ in 0..10 {
        assert_eq!(cut.marker().await.as_deref(), Some("v2"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unconfirmed = eventually_async(Duration::from_secs(30), || async {
        cut.status().await.is_some_and(|status| status["leader_confirmed"] == false)
    })
    .await;
    assert!(unconfirmed, "{:?}", cut.status().await);
    // Its leadership is no longer confirmed by a quorum: the lose-leadership hook ran.
    let hook_log = dir.path().join("leader.log");
    let lost = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(&hook_log).unwrap_or_default().contains(&format!("lose {leader}"))
    })
    .await;
    assert!(lost, "hook log: {}", std::fs::read_to_string(&hook_log).unwrap_or_default());

    // Heal: it catches up with the rollback.
    send(cut.admin, "POST", "/cluster/isolate", &[], r#"{"isolated": false}"#).await?;
    let healed =
        eventually_async(Duration::from_secs(30), || async { cut.marker().await.as_deref() == Some("v1") }).await;
    assert!(healed, "the healed node catches up: {}", cut.logs());
    assert_eq!(cut.plugin_sha().await.as_deref(), Some(v1_sha.as_str()));

    // /metrics carries the cluster gauges (promtool accepts them); exactly one node says it leads.
    let mut leaders = 0;
    for node in nodes {
        let text = String::from_utf8_lossy(&get(node.admin, "/metrics").await?.body).into_owned();
        crate::metrics::check_with_promtool(&text)?;
        assert!(text.contains("portico_cluster_term "), "{text}");
        leaders += usize::from(text.lines().any(|l| l == "portico_cluster_leader 1"));
    }
    assert_eq!(leaders, 1, "one confirmed leader in /metrics");

    // GET /cluster shows the three members and who leads.
    let status = majority[0].status().await.ok_or("status")?;
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3), "{status}");
    assert!(status["leader"].as_u64().is_some(), "{status}");

    // Stop every node; one restarts alone, without a quorum: it serves the last committed state (its file
    // still says v1 too, so make the file differ to tell them apart) and refuses writes.
    let nodes = &mut cluster.nodes;
    for node in nodes.iter_mut() {
        node.kill();
    }
    std::fs::write(dir.path().join("mark.wasm"), marking_plugin("file"))?;
    let lone = &mut nodes[0];
    // Without a leader a write waits out the write timeout before it is refused: shorten it for the lone
    // node, so the refusal comes in seconds rather than the 30 s the busy-machine setting allows.
    let file = std::fs::read_to_string(&lone.config)?;
    assert!(file.contains("write_timeout = \"30s\""), "{file}");
    std::fs::write(&lone.config, file.replace("write_timeout = \"30s\"", "write_timeout = \"2s\""))?;
    lone.spawn()?;
    let up = eventually_async(Duration::from_secs(30), || async { lone.marker().await.is_some() }).await;
    assert!(up, "the lone node serves: {}", lone.logs());
    assert_eq!(lone.marker().await.as_deref(), Some("v1"), "the last committed module, not the local file");
    let denied = send(lone.admin, "POST", "/plugins/mark/rollback", &[], "").await?;
    assert_eq!(denied.status, 503, "no quorum, no write: {}", String::from_utf8_lossy(&denied.body));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_through_the_admin_api_and_is_removed_again() -> TestResult {
    let cluster = three_nodes(false).await?;
    let (nodes, dir) = (&cluster.nodes, &cluster.dir);

    // Node 4: node 3's file with its own id, ports and address, and `join = true`.
    let [admin, cluster_port] = free_ports()?;
    let third = std::fs::read_to_string(&nodes[2].config)?;
    let old_admin = format!("listen = \"{}\"", nodes[2].admin);
    let text = third
        .replace(&old_admin, &format!("listen = \"127.0.0.1:{admin}\""))
        .replace("node_id = 3", "node_id = 4\njoin = true")
        .replace("data_dir = \"node3\"", "data_dir = \"node4\"")
        .replace("bind_address = \"127.0.0.3\"", "bind_address = \"127.0.0.4\"");
    let text = with_cluster_port(&text, cluster_port);
    let config = dir.path().join("node4.toml");
    std::fs::write(&config, &text)?;
    let mut fourth = Node {
        id: 4,
        config,
        log: dir.path().join("node4.log"),
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
        web: SocketAddr::new(std::net::IpAddr::from([127, 0, 0, 4]), nodes[2].web.port()),
        child: None,
    };
    fourth.spawn()?;
    let up = eventually_async(Duration::from_secs(30), || async { fourth.status().await.is_some() }).await;
    assert!(up, "node 4 starts: {}", fourth.logs());
    assert_eq!(fourth.status().await.ok_or("status")?["leader"], serde_json::Value::Null, "it waits to be added");

    let body = format!(r#"{{"node_id": 4, "address": "127.0.0.1:{cluster_port}"}}"#);
    let added = send(nodes[1].admin, "POST", "/cluster/members", &[], &body).await?;
    assert_eq!(added.status, 200, "{}", String::from_utf8_lossy(&added.body));
    let serving =
        eventually_async(Duration::from_secs(30), || async { fourth.marker().await.as_deref() == Some("v1") }).await;
    assert!(serving, "node 4 caught up and serves the cluster's config: {}", fourth.logs());
    // Each node applies a membership change when the entry reaches it: wait for node 1's view.
    let four = eventually_async(Duration::from_secs(30), || async { nodes[0].members().await == [1, 2, 3, 4] }).await;
    assert!(four, "{:?}", nodes[0].status().await);

    let removed = send(nodes[0].admin, "DELETE", "/cluster/members/4", &[], "").await?;
    assert_eq!(removed.status, 200, "{}", String::from_utf8_lossy(&removed.body));
    let three = eventually_async(Duration::from_secs(30), || async { nodes[0].members().await == [1, 2, 3] }).await;
    assert!(three, "{:?}", nodes[0].status().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_lost_leader_waits_out_the_election() -> TestResult {
    let mut cluster = three_nodes(false).await?;
    let (nodes, leader) = (&mut cluster.nodes, cluster.leader);
    let leader_index = nodes.iter().position(|n| n.id == leader).ok_or("leader")?;

    // The operator removes the node they just lost, at once: the survivors still name it as their leader
    // for up to an election timeout, so the call first finds no leader to forward to. It waits the
    // election out (within the write timeout) and commits on the new leader.
    nodes[leader_index].kill();
    let survivor = nodes.iter().find(|n| n.id != leader).ok_or("survivor")?;
    let asked = Instant::now();
    let removed = send(survivor.admin, "DELETE", &format!("/cluster/members/{leader}"), &[], "").await?;
    assert_eq!(removed.status, 200, "{}", String::from_utf8_lossy(&removed.body));
    eprintln!("membership change during an election answered after {:?}", asked.elapsed());
    let expected: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let applied = eventually_async(Duration::from_secs(30), || async { survivor.members().await == expected }).await;
    assert!(applied, "{:?}", survivor.status().await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_cannot_run_the_clusters_config_says_so() -> TestResult {
    let cluster = three_nodes(false).await?;
    let nodes = &cluster.nodes;

    // A second listener on a port that is taken on node 2's address only (each node binds its own 127.0.0.N).
    let [port] = free_ports()?;
    let taken = std::net::TcpListener::bind(("127.0.0.2", port))?;
    let file = std::fs::read_to_string(&nodes[0].config)?;
    let extra = format!("{file}\n[[listener]]\nname = \"extra\"\nlisten = \"0.0.0.0:{port}\"\nupstream = \"app\"\n");
    let pushed = send(nodes[0].admin, "PUT", "/config", &[], &extra).await?;
    assert_eq!(pushed.status, 200, "{}", String::from_utf8_lossy(&pushed.body));
    let index = pushed.json()["index"].as_u64().ok_or("index")?;

    let refused = |node: &Node| {
        let admin = node.admin;
        async move { get(admin, "/cluster").await.ok().map(|a| a.json()["config_refused"].clone()) }
    };
    let said = eventually_async(Duration::from_secs(30), || async {
        refused(&nodes[1]).await.is_some_and(|r| r["index"].as_u64() == Some(index))
    })
    .await;
    let on_node2 = refused(&nodes[1]).await.ok_or("status")?;
    assert!(said, "node 2 reports the refusal: {on_node2} {}", nodes[1].logs());
    let reason = on_node2["reason"].as_str().unwrap_or("");
    assert!(reason.contains(&format!("127.0.0.2:{port}")), "the reason names the address: {reason}");
    for node in [&nodes[0], &nodes[2]] {
        assert_eq!(refused(node).await, Some(serde_json::Value::Null), "node {} runs it", node.id);
    }
    let gauge =
        |text: &str| text.lines().find(|l| l.starts_with("portico_cluster_config_refused ")).map(str::to_string);
    let metrics = String::from_utf8_lossy(&get(nodes[1].admin, "/metrics").await?.body).into_owned();
    assert_eq!(gauge(&metrics).as_deref(), Some("portico_cluster_config_refused 1"));
    // Node 2 kept serving its previous configuration.
    assert_eq!(nodes[1].marker().await.as_deref(), Some("v1"));

    // Once the port is free, node 2 catches up by itself (it retries every 5 s) and the refusal is gone.
    drop(taken);
    let cleared = eventually_async(Duration::from_secs(12), || async {
        refused(&nodes[1]).await == Some(serde_json::Value::Null)
    })
    .await;
    assert!(cleared, "node 2 applied the configuration once it could: {}", nodes[1].logs());
    let extra_on_node2 = SocketAddr::from(([127, 0, 0, 2], port));
    assert!(get(extra_on_node2, "/").await.is_ok_and(|a| a.status == 200), "node 2 serves the new listener");
    let metrics = String::from_utf8_lossy(&get(nodes[1].admin, "/metrics").await?.body).into_owned();
    assert_eq!(gauge(&metrics).as_deref(), Some("portico_cluster_config_refused 0"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_replicate_to_every_node_and_expire_on_every_node() -> TestResult {
    let cluster = three_nodes(false).await?;
    let nodes = &cluster.nodes;
    let b = TestUpstream::start("b").await;
    let listed = |node: &Node| {
        let (admin, address) = (node.admin, b.addr.to_string());
        async move {
            let answer = get(admin, "/upstreams").await.ok().map(|a| a.json()).unwrap_or_default();
            let app =
                answer.as_array().and_then(|l| l.iter().find(|u| u["name"] == "app").cloned()).unwrap_or_default();
            let endpoints = app["endpoints"].as_array().cloned().unwrap_or_default();
            endpoints.iter().any(|e| e["address"] == address && e["source"] == "registered")
        }
    };

    // Registered through a follower: every node lists it and sends it traffic.
    let follower = nodes.iter().find(|n| n.id != cluster.leader).ok_or("follower")?;
    let body = format!(r#"{{"address": "{}", "weight": 1}}"#, b.addr);
    let answer = send(follower.admin, "POST", "/upstreams/app/endpoints", &[], &body).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    for node in nodes {
        assert!(eventually_async(Duration::from_secs(30), || listed(node)).await, "node {} lists it", node.id);
        let before = b.hits();
        let reached = eventually_async(Duration::from_secs(30), || async {
            let _ = get(node.web, "/").await;
            b.hits() > before
        })
        .await;
        assert!(reached, "node {} sends traffic to the registered endpoint", node.id);
    }
    // Bad input is refused before anything is proposed.
    let bad = send(follower.admin, "POST", "/upstreams/app/endpoints", &[], r#"{"address": "b:1"}"#).await?;
    assert_eq!(bad.status, 400);

    // Deregistered through another node: gone everywhere.
    let other = nodes.iter().find(|n| n.id != follower.id).ok_or("other")?;
    let path = format!("/upstreams/app/endpoints/{}", b.addr);
    let answer = send(other.admin, "DELETE", &path, &[], "").await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    for node in nodes {
        let gone = eventually_async(Duration::from_secs(30), || async { !listed(node).await }).await;
        assert!(gone, "node {} dropped it", node.id);
    }

    // Registered once with a TTL and never renewed: it appears on every node, then expires on every node.
    let body = format!(r#"{{"address": "{}", "ttl": "2s"}}"#, b.addr);
    let answer = send(follower.admin, "POST", "/upstreams/app/endpoints", &[], &body).await?;
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    assert!(listed(follower).await, "the answer comes once this node applied it");
    let replicated = follower.status().await.ok_or("status")?;
    assert_eq!(replicated["registrations"]["app"][b.addr.to_string()]["ttl_ms"], 2000, "{replicated}");
    for node in nodes {
        let expired = eventually_async(Duration::from_secs(30), || async { !listed(node).await }).await;
        assert!(expired, "node {} let it expire", node.id);
    }
    // The leader removes it from the replicated state too (GET /cluster shows what is replicated).
    for node in nodes {
        let collected = eventually_async(Duration::from_secs(30), || async {
            node.status().await.is_some_and(|s| s["registrations"] == serde_json::json!({}))
        })
        .await;
        assert!(collected, "node {} no longer holds it: {:?}", node.id, node.status().await);
    }
    Ok(())
}

/// Replaces the port of the `[cluster]` listen line (the one line with `listen = "127.0.0.1:` after `node_id`).
fn with_cluster_port(text: &str, port: u16) -> String {
    let mut out = String::new();
    let mut in_cluster = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_cluster = line == "[cluster]";
        }
        if in_cluster && line.starts_with("listen = ") {
            out.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}
